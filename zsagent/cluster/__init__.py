"""Several agents on one Ceph cluster: who is alive (``agents``), one copy per volume across hosts
(``volume_lock``), and a stopped agent's jobs and leftovers taken over by a live one (``takeover``).

Everything here lives as RADOS objects in the RADOS store's pool and namespace (zsagent.store.rados), so
that Ceph, which every agent reaches anyway, is the only shared service. With the SQLite store none of it
is used.
"""
