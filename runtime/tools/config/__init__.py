"""Configuration objects of the tools (Monarch's ``monarch.tools.config``)."""
