# The two commands a new user runs: `make demo` and `make test` (see README.md).
.PHONY: setup test demo bench lint reliability

setup:
	scripts/setup

# Starts a throwaway Ceph cluster and sshd, runs pytest and ruff, stops the services even on failure.
test: setup
	scripts/run-tests $(PYTEST_ARGS)

# The whole reliability suite (tests/reliability), its long cases included; prints the figures it measured.
reliability: setup
	scripts/run-tests tests/reliability -m "" $(PYTEST_ARGS)

lint: setup
	.venv/bin/ruff check .

demo: setup
	scripts/demo

bench: setup
	.venv/bin/python bench/run.py $(if $(SWEEP),--sweep) $(BENCH_ARGS)

# SFTP uploads (ours, MD5 included) against OpenSSH's sftp put on a throwaway loopback sshd; ~4 min.
.PHONY: bench-sftp
bench-sftp: setup
	.venv/bin/python bench/sftp.py $(BENCH_ARGS)
