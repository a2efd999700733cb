import subprocess
import sys

from click.testing import CliRunner

from fathom.runtime.cli import main


def test_help_lists_every_command_with_its_whole_first_sentence():
    out = CliRunner().invoke(main, ["--help"]).output
    for name, command in main.commands.items():
        assert f"  {name} " in out
        first_word_run = command.get_short_help_str(200).split()[:4]
        assert " ".join(first_word_run) in " ".join(out.split())
    assert "..." not in out.split("Commands:")[1]


def test_version():
    from fathom.runtime import version

    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and version() in r.output


def test_help_does_not_import_heavy_modules():
    code = ("import sys; from fathom.runtime.cli import main; "
            "heavy = [m for m in ('torch', 'transformers', 'matplotlib', 'pynvml', 'tensorrt_llm') if m in sys.modules]; "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
