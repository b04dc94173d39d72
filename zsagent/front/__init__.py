"""`zsagent front`: stands where an unmodified ZStack management node sends its storage agents' commands.

It takes over the template commands (Ceph ``volume/cp`` and ``sftpbackupstorage/upload``, local/NFS
``createtemplate`` + upload, ``/job/cancel`` of its own jobs) and passes everything else byte for byte
to ZStack's own agent. Modules: ``wire`` (the MN's transport facts), ``forward`` (byte-exact relay),
``routes`` (one function per taken-over command), ``destinations`` (the command's targets), ``intents``
(local/NFS in one pass), ``callbacks`` (results and progress to the MN), ``front`` (the dispatcher and
restart), ``server`` (HTTP server and daemon).
"""
