# The two commands a new user runs: `make demo` and `make test` (see README.md).
.PHONY: setup test demo bench lint reliability

setup:
	scripts/setup

# Starts a throwaway Ceph cluster and sshd, runs pytest and ruff, stops the services even on failure.
test: setup
	scripts/run-tests $(PYTEST_ARGS)

# The long and heavy cases (pytest marker "reliability") and the whole reliability suite (tests/reliability),
# against the same throwaway services; prints the figures the crash tests measured.
.PHONY: reliability
reliability: setup
	scripts/run-tests -m reliability $(PYTEST_ARGS)
	scripts/run-tests tests/reliability -m "not reliability" $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .

demo: setup
	scripts/demo

bench: setup
	.venv/bin/python bench/run.py $(if $(SWEEP),--sweep) $(BENCH_ARGS)
	.venv/bin/python bench/front.py
	.venv/bin/python bench/store.py

# Templates through `zsagent front` against ZStack's own agent commands (rbd export | ssh cat, qemu-img
# convert + scp) on the same data; also the last part of `make bench`.
.PHONY: bench-front
bench-front: setup
	.venv/bin/python bench/front.py $(BENCH_ARGS)

# SFTP uploads (ours, MD5 included) against OpenSSH's sftp put on a throwaway loopback sshd; ~4 min.
.PHONY: bench-sftp
bench-sftp: setup
	.venv/bin/python bench/sftp.py $(BENCH_ARGS)

# The RADOS store against SQLite (ms per create) and three agents on one cluster against one (throughput,
# p99); also the last part of `make bench`.
.PHONY: bench-store
bench-store: setup
	.venv/bin/python bench/store.py $(BENCH_ARGS)
