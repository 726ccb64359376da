"""JUnit XML for ``jaxport validate --junit``: one ``testcase`` per validated module.

A ``fail`` is a ``<failure>`` whose text holds the failed checks and the (shrunk)
counterexample, an ``error`` an ``<error>``, a ``skip`` a ``<skipped>``; the maximal errors go
to ``<system-out>``. CI systems (GitHub, GitLab, Jenkins) show these natively.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def junit_xml(report: dict, suite: str, classname: str) -> str:
    modules = report["modules"]
    counts = report["summary"]
    total_time = sum(float(m.get("seconds") or 0.0) for m in modules)
    root = ET.Element("testsuites", name="jaxport validate", tests=str(len(modules)),
                      failures=str(counts.get("fail", 0)), errors=str(counts.get("error", 0)),
                      skipped=str(counts.get("skip", 0)), time=f"{total_time:.3f}")
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(modules)),
                       failures=str(counts.get("fail", 0)), errors=str(counts.get("error", 0)),
                       skipped=str(counts.get("skip", 0)), time=f"{total_time:.3f}")
    for m in modules:
        tc = ET.SubElement(ts, "testcase", classname=classname, name=m["name"],
                           time=f"{float(m.get('seconds') or 0.0):.3f}")
        message = m.get("message") or ""
        first = message.splitlines()[0] if message else m["status"]
        if m["status"] == "fail":
            el = ET.SubElement(tc, "failure", message=first[:500], type="NumericalMismatch")
            lines = [f"{c['name']}: abs={_fmt(c['max_abs_err'])} rel={_fmt(c['max_rel_err'])} {c['message']}"
                     for c in m.get("checks", []) if c.get("status") != "pass"]
            ce = m.get("counterexample")
            if ce is not None:
                from .strategies import counterexample_text
                lines.append(f"counterexample: {counterexample_text(ce)}")
            el.text = "\n".join(lines) or message
        elif m["status"] == "error":
            el = ET.SubElement(tc, "error", message=first[:500], type="ValidationError")
            el.text = message
        elif m["status"] == "skip":
            ET.SubElement(tc, "skipped", message=first[:500])
        out = ET.SubElement(tc, "system-out")
        out.text = (f"examples={m.get('examples', 0)} max_abs_err={_fmt(m.get('max_abs_err'))} "
                    f"max_rel_err={_fmt(m.get('max_rel_err'))}")
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(report: dict, path: str | Path, original: str | Path) -> None:
    original = Path(original)
    Path(path).write_text(junit_xml(report, original.name, original.stem), encoding="utf-8")
