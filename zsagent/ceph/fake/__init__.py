"""The fake Ceph backend: ``rados`` and ``rbd`` modules with the API subset zsagent uses, on local files
(pools, RBD images, and RADOS objects with xattrs, omap, guarded write ops and cls_lock locks).

``zsagent.ceph.open_backend(CephConfig(backend="fake", fake_root=DIR))`` hands these modules to the rest
of the agent in place of python-rados / python-rbd. The contract suite (``tests/contract``) runs the
same tests against both and is what keeps this honest; ``rbd.py`` documents the model and the few
deliberate differences.
"""
