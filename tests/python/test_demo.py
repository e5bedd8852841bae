"""The demo's fan-out stage (`make demo`, section 2b): pool-backed frames shared with two
subinterpreters and one process, no byte copied, every frame back in the pool."""

from memchannel import demo


def test_fan_out_stage_copies_nothing_and_returns_every_frame(capsys):
    demo.fan_out(12)
    out = capsys.readouterr().out
    assert "bytes copied: 0;" in out
    assert "frames back in the pool: 6/6" in out
    assert "process consumer exit code 0" in out
    assert "saw each frame at the same address: True" in out
