"""What the benchmarks and the tuned kernel settings record about the machine."""

from __future__ import annotations

from neurostep.machine import cpu_model, cpu_signature

_ZEN3 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx avx2 fma

processor\t: 1
cpu family\t: 25
model\t\t: 17
flags\t\t: avx2 avx512f
"""


def test_cpu_signature_tells_apart_cpus_that_share_a_model_name(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(_ZEN3)
    assert cpu_signature(str(path)) == "family 25 model 1, AVX2"           # the first processor's block
    path.write_text(_ZEN3.replace("model\t\t: 1\n", "model\t\t: 17\n").replace("avx2 fma", "avx2 avx512f fma"))
    assert cpu_signature(str(path)) == "family 25 model 17, AVX-512"
    path.write_text("processor\t: 0\nmodel name\t: Apple M2\n")           # no family or model: nothing to add
    assert cpu_signature(str(path)) == ""
    assert cpu_signature(str(tmp_path / "missing")) == ""


def test_cpu_model_names_this_machine():
    assert isinstance(cpu_model(), str) and cpu_model()
