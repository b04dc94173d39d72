"""zsagent: ZStack data volume templates from Ceph and file volumes."""

__version__ = "0.1.0"
