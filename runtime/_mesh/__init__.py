"""Layer 3 of the runtime: host/proc/actor meshes, bootstrap, routing and cast trees."""
