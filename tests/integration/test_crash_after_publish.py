"""kill -9 of the agent after its templates were published but before the image was recorded: the
restarted agent removes them (no client was told about them), and a retry with the same resourceUuid
then succeeds with the right md5."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

from agent_harness import ACCOUNT, file_volume, running_agent, write_config
from support import md5sum_file

# Runs create_template in a process of its own, armed to SIGKILL itself where the record would be written
# (the test-only fault hook, zsagent/faults.py).
CRASHING_AGENT = """
import json, sys
from zsagent.agent import build_agent
from zsagent.config import parse_config
from zsagent.request import parse_body

raw, volume, image = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
agent = build_agent(parse_config(raw))
request = parse_body({"params": {"name": "t", "resourceUuid": image, "backupStorageUuids": sys.argv[5:]}}, volume)
agent.service.create_template(request, sys.argv[4])
"""


def test_kill_after_publish_before_record_leaves_no_unknown_template(rbd_env, tmp_path):
    env = rbd_env
    ps_root, bs_root = tmp_path / "ps", tmp_path / "bs"
    ps_root.mkdir()
    bs_root.mkdir()
    ceph_bs, file_bs = uuid.uuid4().hex, uuid.uuid4().hex
    raw = write_config(tmp_path, env.ceph_config, [{"uuid": uuid.uuid4().hex, "type": "filesystem",
                                                     "path": str(ps_root)}],
                       [{"uuid": ceph_bs, "type": "ceph", "pool": env.dst_pool},
                        {"uuid": file_bs, "type": "filesystem", "path": str(bs_root), "format": "raw"}])
    raw["virt"] = {"enabled": False}
    volume, volume_path = file_volume(ps_root)
    image = "4f1b2c3d4e5f41a08b9c0d1e2f3a4b5c"
    template = bs_root / "dataVolumeTemplates" / f"acct-{ACCOUNT}" / image / f"{image}.raw"

    crashed = subprocess.run([sys.executable, "-c", CRASHING_AGENT, json.dumps(raw), volume, image, ACCOUNT,
                              ceph_bs, file_bs], capture_output=True, text=True, timeout=300,
                             env={**os.environ, "ZSAGENT_FAULT": "record-before:kill"})
    assert crashed.returncode == -9, crashed.stderr
    assert template.exists() and image in env.rbd.RBD().list(env.dst)  # both were published

    with running_agent(raw) as agent:  # the restart's reconcile
        assert not template.exists() and not (bs_root / "dataVolumeTemplates").exists()
        assert image not in env.rbd.RBD().list(env.dst)
        assert agent.agent.store.artifacts() == []
        retry = agent.post_create(volume, {"resourceUuid": image, "backupStorageUuids": [ceph_bs, file_bs]})
        assert retry.status_code == 200, retry.text
        inventory = retry.json()["inventory"]
        assert inventory["md5Sum"] == md5sum_file(volume_path) == md5sum_file(template)
        assert inventory["md5Sum"] == env.export_md5(env.dst_pool, image)
