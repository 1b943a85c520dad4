import os
import subprocess
import sys

import pytest

BAD_INPUTS = [
    (["inspect", "no-such-org/no-such-model"], "not in the local Hugging Face cache"),
    (["inspect", "gpt2"], "hf download gpt2"),
    (["inspect", "gpt2", "--random-weights", "--strategy", "L99"], "layer 99 out of range"),
    (["inspect", "tiny-gpt2", "--quant", "int0"], "bits must be between 2 and 8"),
    (["inspect", "tiny-gpt2", "--quant", "int9"], "bits must be between 2 and 8"),
    (["inspect", "tiny-gpt2", "--quant", "int4-g0"], "group size must be a positive"),
    (["inspect", "/nowhere/model.gguf"], "GGUF file not found"),
]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "quantfair.cli", *args],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("args, message", BAD_INPUTS)
def test_bad_input_is_one_clear_line(args, message):
    result = run_cli(*args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_inspect_random_gpt2_prints_family_and_seed_overheads():
    result = run_cli("inspect", "gpt2", "--random-weights", "--strategy", "L0+Llast+ln_f+biases")
    assert result.returncode == 0, result.stderr
    assert "family: gpt2" in result.stdout
    assert "| L0+Llast+ln_f+biases " in result.stdout and "11.461%" in result.stdout
