"""Speed figures name their CPU: the instruction sets read from /proc/cpuinfo."""

from training.release.machine import describe_machine, machine_label

CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma
processor\t: 1
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx2 fma
"""


def test_an_avx2_only_cpu_is_named_as_such(tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO)
    machine = describe_machine(tmp_path / "cpuinfo")
    assert machine["cpu"] == "AMD EPYC 7B13" and machine["instruction_sets"] == ["AVX2"]
    assert machine_label(machine).endswith(", AMD EPYC 7B13, AVX2")


def test_the_best_int8_instructions_come_first(tmp_path):
    (tmp_path / "cpuinfo").write_text(CPUINFO.replace("avx2 fma", "avx2 avx512f avx512_vnni fma"))
    machine = describe_machine(tmp_path / "cpuinfo")
    assert machine["instruction_sets"] == ["AVX-512 VNNI", "AVX-512", "AVX2"]
    assert "AVX-512 VNNI" in machine_label(machine)


def test_a_machine_without_cpuinfo_still_gets_a_label(tmp_path):
    machine = describe_machine(tmp_path / "absent")
    assert machine["instruction_sets"] == [] and machine_label(machine).endswith("no AVX2")
