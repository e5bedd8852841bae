"""Side-by-side benchmark harness: memchannel against its peers, in the same run.

    python -m bench.harness [--quick|--smoke] [--only NAME[,NAME]] [--out DIR] [--docs FILE]
    python -m bench.harness --install-peers

This package's ``__init__`` stays import-light: parties import ``bench.harness.party``
inside isolated subinterpreters.
"""


def run(mode="full", only=None, out_dir=None, plots=True, docs=None):
    """Run the benchmarks; returns (run_info, {"json": path, "markdown": path[, "docs": path]})."""
    from . import cli
    return cli.run(mode=mode, only=only, out_dir=out_dir or cli.DEFAULT_OUT, plots=plots,
                   docs=docs)


def install_peers(out_dir=None):
    """pip-install the peer libraries; returns {distribution: None | failure reason}."""
    from . import cli, peers
    return peers.install_peers(out_dir or cli.DEFAULT_OUT)
