"""What the benchmark reports about the interpreter that runs pki-edge."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from bench import tools

PYENV = "'--prefix=/root/.pyenv/versions/3.11.7' '--enable-shared' '--libdir=/root/.pyenv/versions/3.11.7/lib'"
DEBIAN = "'--enable-shared' '--prefix=/usr' '--libdir=/usr/lib/x86_64-linux-gnu' '--with-computed-gotos'"
DOCKER = "'--enable-loadable-sqlite-extensions' '--enable-optimizations' '--enable-shared' '--with-lto'"


@pytest.mark.parametrize(
    ("config_args", "shared", "build"),
    [
        (PYENV, True, "shared libpython, built without --enable-optimizations"),
        (DEBIAN, False, "static executable, a distribution's build"),
        (DOCKER, True, "shared libpython, --enable-optimizations --with-lto"),
        ("'--enable-optimizations'", False, "static executable, --enable-optimizations"),
        ("'--prefix=/opt/py'", False, "static executable, built without --enable-optimizations"),
        ("", False, "static executable, built without --enable-optimizations"),
    ],
)
def test_python_build(config_args: str, shared: bool, build: str) -> None:
    assert tools.python_build(config_args, shared) == build


def test_interpreter_names_version_executable_and_build() -> None:
    python = tools.interpreter()
    assert python.split()[0].count(".") == 2  # 3.11.7
    assert os.path.realpath(sys.executable) in python and tools.python_build() in python


def test_python_of_another_interpreter_says_what_it_says_itself() -> None:
    assert tools.python_of(Path(sys.executable)) == tools.interpreter()


def test_python_of_a_missing_interpreter() -> None:
    assert tools.python_of(Path("/nonexistent/python")).startswith("? (")
