"""Fixtures for tests on real machines-in-a-box: namespace hosts, a Slurm cluster, an sshd.

- ``hosts`` (function scope) / ``module_hosts`` (module scope): a :class:`HostNet` of 2 hosts;
  another count with ``@pytest.mark.parametrize("hosts", [3], indirect=True)``.
- ``slurm`` (module scope): a :class:`SlurmCluster` over ``module_hosts``, all nodes idle.
- ``sshd`` (function scope): an :class:`SshServer` in ``hosts[0]``.

Everything they start is killed and removed at teardown, even when the test fails; the
leftovers of a crashed earlier run are removed before the first test, and the session fails if
anything of this run is left at its end. The summary prints each fixture's set-up time.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.multihost import netns, slurm, sshd
from tests.multihost.netns import HostNet
from tests.multihost.slurm import SlurmCluster
from tests.multihost.sshd import SshServer

DEFAULT_HOST_COUNT = 2
_setup_times: list[tuple[str, float]] = []
_nets: list[HostNet] = []


def _open_net(request: pytest.FixtureRequest, label: str) -> HostNet:
    reason = netns.unavailable_reason()
    if reason:
        pytest.skip(reason)
    count = getattr(request, "param", DEFAULT_HOST_COUNT)
    net = HostNet(count)
    request.addfinalizer(net.close)
    _nets.append(net)
    _setup_times.append((f"{label}({count})", net.setup_s))
    return net


@pytest.fixture
def hosts(request: pytest.FixtureRequest) -> HostNet:
    """Namespace hosts for one test (2 unless parametrised indirectly)."""
    return _open_net(request, "hosts")


@pytest.fixture(scope="module")
def module_hosts(request: pytest.FixtureRequest) -> HostNet:
    """Namespace hosts shared by a module's tests (2 unless parametrised indirectly)."""
    return _open_net(request, "module_hosts")


@pytest.fixture(scope="module")
def slurm_cluster(request: pytest.FixtureRequest, module_hosts: HostNet) -> SlurmCluster:
    """A Slurm cluster whose nodes are ``module_hosts`` (``hX`` on host X), all idle.

    3 nodes: ``@pytest.mark.parametrize("module_hosts", [3], indirect=True)`` on the test.
    """
    reason = slurm.unavailable_reason()
    if reason:
        pytest.skip(reason)
    net = module_hosts
    cluster = SlurmCluster(net)
    request.addfinalizer(cluster.close)
    _setup_times.append((f"slurm_cluster({len(net)} nodes)", cluster.setup_s))
    return cluster


@pytest.fixture
def sshd_server(request: pytest.FixtureRequest, hosts: HostNet) -> SshServer:
    """An sshd in ``hosts[0]`` on its IP, port 22, accepting ``sshd_server.client_key``."""
    reason = sshd.unavailable_reason()
    if reason:
        pytest.skip(reason)
    server = SshServer(hosts[0])
    request.addfinalizer(server.close)
    _setup_times.append(("sshd_server", server.setup_s))
    return server


@pytest.fixture(autouse=True, scope="session")
def _no_multihost_leftovers() -> Iterator[None]:
    """Remove a crashed earlier run's leftovers first; fail if this run leaves anything behind."""
    if netns.unavailable_reason() is None:
        netns.remove_leftovers()
    yield
    left = [item for net in _nets for item in net.leftovers()]
    left += [item for prefix in netns.created_prefixes for item in netns.leftovers_of(prefix)]
    if left:
        netns.remove_leftovers(include_live_owners=True)
        pytest.fail(f"multihost fixtures left behind: {left}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not _setup_times:
        return
    by_label: dict[str, list[float]] = {}
    for label, seconds in _setup_times:
        by_label.setdefault(label, []).append(seconds)
    parts = [
        f"{label} {min(times):.2f}-{max(times):.2f} s (x{len(times)})"
        if len(times) > 1
        else f"{label} {times[0]:.2f} s"
        for label, times in sorted(by_label.items())
    ]
    terminalreporter.write_line("multihost fixture set-up: " + ", ".join(parts))
