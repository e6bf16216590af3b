"""Bad papers (issue #6): each is made on the fly and gets one clear PaperError, or a bounded read with a report.

Every refusal must say what is wrong with which file and what to do about it, in one line the CLI can print
after "p2c: error:"; a very long PDF is read in bounded time and memory and the report says what was kept.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pymupdf
import pytest
from conftest import EXAMPLE

from p2c_notebook.cli import main
from p2c_notebook.errors import PaperError
from p2c_notebook.paper import read_paper
from p2c_notebook.paper.read import MAX_TEXT_BYTES

PDF = EXAMPLE / "paper.pdf"
TEX = EXAMPLE / "paper.tex"
JUNK = random.Random(6).randbytes(4096)


def refusal(path: Path, **limits: int) -> str:
    """The PaperError message for `path`; it must fit on one line after "p2c: error:"."""
    with pytest.raises(PaperError) as caught:
        read_paper(path, **limits)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    return message


def assert_says(message: str, *fragments: str) -> None:
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def tar_gz(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def zipped(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def docx() -> bytes:
    return zipped({"[Content_Types].xml": "<Types/>", "word/document.xml": "<w:document>Mixup</w:document>"})


def png() -> bytes:
    with pymupdf.open(PDF) as doc:
        return bytes(doc[0].get_pixmap(dpi=30).tobytes("png"))


# --- a wrong format under a .pdf name ------------------------------------------------------------

IMPOSTORS = {
    "html": (
        lambda: b"<!DOCTYPE html><html><head><title>arXiv</title></head><body>Mixup</body></html>",
        ("HTML page", "download the PDF itself"),
    ),
    "docx": (docx, ("ZIP archive", "Word .docx", "export the paper as PDF")),
    "zipped source": (lambda: zipped({"paper.tex": TEX.read_text()}), ("rename a LaTeX source bundle to .zip",)),
    "source": (lambda: tar_gz({"paper.tex": TEX.read_text()}), ("gzip archive", "rename it to .tar.gz")),
    "png": (png, ("PNG image", "download the paper's PDF")),
    "latex": (TEX.read_bytes, ("LaTeX source, not a PDF", "rename it to .tex")),
    "notes": (lambda: b"Some notes about the mixup paper.\n", ("not a PDF", "holds text", "re-download the paper")),
    "junk": (lambda: JUNK, ("not a PDF", "holds binary data", "re-download the paper")),
}


@pytest.mark.parametrize("kind", sorted(IMPOSTORS))
def test_a_file_named_pdf_that_is_something_else_is_named_for_what_it_is(tmp_path: Path, kind: str) -> None:
    make, fragments = IMPOSTORS[kind]
    path = tmp_path / "paper.pdf"
    path.write_bytes(make())
    assert_says(refusal(path), "paper.pdf", *fragments)


@pytest.mark.parametrize(("kind", "suffix"), [("source", ".tar.gz"), ("zipped source", ".zip"), ("latex", ".tex")])
def test_following_the_rename_advice_reads_the_paper(tmp_path: Path, kind: str, suffix: str) -> None:
    path = tmp_path / f"paper{suffix}"
    path.write_bytes(IMPOSTORS[kind][0]())
    paper = read_paper(path)
    assert paper.title.startswith("Mixup") and paper.source_format == "latex"


# --- empty, truncated, damaged -------------------------------------------------------------------


@pytest.mark.parametrize("name", ["paper.pdf", "paper.tex", "paper.json", "paper.md", "paper.txt", "src.tar.gz", "x"])
def test_a_zero_byte_file_is_called_empty_whatever_its_name(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"")
    assert_says(refusal(path), name, "is empty (0 bytes)", "fetch it again")


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.75, 0.97])
def test_a_truncated_pdf_is_called_truncated_with_advice_to_fetch_it_again(tmp_path: Path, fraction: float) -> None:
    data = PDF.read_bytes()
    path = tmp_path / "cut.pdf"
    path.write_bytes(data[: int(len(data) * fraction)])
    message = refusal(path)
    assert_says(message, "cut.pdf", "truncated")
    assert "fetch the PDF again" in message or "download it again" in message


def test_a_pdf_header_followed_by_junk_is_called_damaged(tmp_path: Path) -> None:
    path = tmp_path / "junk.pdf"
    path.write_bytes(b"%PDF-1.7\n" + JUNK)
    assert_says(refusal(path), "junk.pdf", "damaged or truncated PDF", "download it again")


# --- encrypted and image-only PDFs ---------------------------------------------------------------


def test_a_password_protected_pdf_says_how_to_decrypt_it(tmp_path: Path) -> None:
    path = tmp_path / "locked.pdf"
    with pymupdf.open(PDF) as doc:
        doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", user_pw="secret")
    assert_says(refusal(path), "locked.pdf", "password-protected", "qpdf --decrypt")


def test_a_pdf_with_only_an_owner_password_is_read(tmp_path: Path) -> None:
    """Permissions-only encryption (no password to open) is common for publisher PDFs: it must just work."""
    path = tmp_path / "restricted.pdf"
    with pymupdf.open(PDF) as doc:
        doc.save(path, encryption=pymupdf.PDF_ENCRYPT_AES_256, owner_pw="owner", permissions=pymupdf.PDF_PERM_PRINT)
    assert read_paper(path).to_text() == read_paper(PDF).to_text()


def test_a_scanned_pdf_without_a_text_layer_says_to_run_ocr(tmp_path: Path) -> None:
    scan = pymupdf.open()
    with pymupdf.open(PDF) as doc:
        for page in doc:
            image = scan.new_page(width=page.rect.width, height=page.rect.height)
            image.insert_image(image.rect, pixmap=page.get_pixmap(dpi=50))
    path = tmp_path / "scan.pdf"
    scan.save(path)
    assert_says(refusal(path), "scan.pdf", "no text layer", "scanned, image-only PDF", "ocrmypdf scan.pdf scan-ocr.pdf")


# --- a 300-page PDF: bounded time and memory, and the report says what was kept -------------------

READ_LONG = """
import json, resource, sys, time
from p2c_notebook.paper import read_paper
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
paper = read_paper(sys.argv[1], **json.loads(sys.argv[2]))
print(json.dumps({
    "seconds": time.perf_counter() - start,
    "rss_growth_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024,
    "summary": paper.report().summary(),
    "characters": paper.report().characters,
    "pages_read": paper.pages_read,
    "dropped": paper.dropped,
    "text": paper.to_text(),
}))
"""


@pytest.fixture(scope="module")
def long_pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 pages of real two-column paper pages: the example paper, then its body pages over and over."""
    path = tmp_path_factory.mktemp("long") / "long.pdf"
    with pymupdf.open(PDF) as source, pymupdf.open() as doc:
        doc.insert_pdf(source)
        while doc.page_count < 300:
            doc.insert_pdf(source, from_page=1, to_page=min(2, 300 - doc.page_count))
        doc.save(path, garbage=3, deflate=True)
    return path


def read_in_fresh_process(path: Path, **limits: int) -> dict[str, object]:
    """Read in a new interpreter, so its peak resident memory is this read's alone (MuPDF's C heap included)."""
    done = subprocess.run(
        [sys.executable, "-c", READ_LONG, str(path), json.dumps(limits)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


@pytest.mark.slow
def test_a_300_page_pdf_is_read_in_bounded_time_and_memory_and_the_report_says_what_was_kept(
    long_pdf: Path,
) -> None:
    with pymupdf.open(long_pdf) as doc:
        assert doc.page_count == 300
    result = read_in_fresh_process(long_pdf)
    assert float(result["seconds"]) < 20  # ~5 s on a 2-core machine
    assert float(result["rss_growth_mb"]) < 300  # ~50 MB measured
    summary = str(result["summary"])
    assert_says(summary, "300 pages (read only pages 1-100)", "pages 101-300 (over the 100-page limit)")
    assert_says(summary, "references (page", "acknowledgements (page")
    assert_says(summary, "to the end (over the 300,000-character limit: kept ")
    assert int(str(result["characters"])) <= 300_000
    assert str(result["text"]).startswith("# Mixup")


@pytest.mark.slow
def test_a_character_limit_keeps_the_start_and_reports_the_cut(long_pdf: Path) -> None:
    result = read_in_fresh_process(long_pdf, max_chars=30_000)
    assert int(str(result["characters"])) <= 30_000
    assert int(str(result["pages_read"])) < 30  # it stopped reading pages once it had enough text
    dropped = [str(d) for d in result["dropped"]]  # type: ignore[attr-defined]
    assert any("(not read: the pages before hold enough text)" in d for d in dropped), dropped
    cut = dropped[-1]
    assert_says(cut, "to the end (over the 30,000-character limit: kept ")
    assert "## Abstract" in str(result["text"]) and "## 1 Introduction" in str(result["text"])
    assert_says(str(result["summary"]), "300 pages (read only pages 1-", "30,000-character limit")


def test_a_huge_text_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "dump.txt"
    with path.open("wb") as handle:
        handle.truncate(MAX_TEXT_BYTES + 1)  # sparse: no disk is spent
    assert_says(refusal(path), "dump.txt", "too large for a paper's text", "picked the right file")


def test_a_long_text_paper_is_cut_to_the_character_limit_at_a_paragraph(tmp_path: Path) -> None:
    path = tmp_path / "long.md"
    paragraphs = {n: [f"Paragraph {i} of part {n} says something. " * 5 for i in range(8)] for n in range(1, 200)}
    sections = [f"## {n} Part {n}\n\n" + "\n\n".join(paragraphs[n]) for n in paragraphs]
    path.write_text("# A Long Paper\n\n## Abstract\n\nShort.\n\n" + "\n\n".join(sections))
    paper = read_paper(path, max_chars=20_000)
    text = paper.to_text()
    assert 19_000 < len(text) <= 20_000 and text.startswith("# A Long Paper\n\n## Abstract\n\nShort.")
    last = paper.sections[-1]
    kept = last.text.split("\n\n")
    assert 0 < len(kept) < 8 and kept == [p.strip() for p in paragraphs[int(last.number or 0)][: len(kept)]]
    assert_says(paper.dropped[-1], "the text from ", "to the end (over the 20,000-character limit")


# --- LaTeX bundles ---------------------------------------------------------------------------------


def split_example(preamble_input: str = "") -> dict[str, str]:
    """The example paper as a bundle: main.tex with \\input{sections/method} for its Method section."""
    text = TEX.read_text()
    start, end = text.index("\\section{Method}"), text.index("\\section{Experimental Setup}")
    main_tex = text[:start] + "\\input{sections/method}\n" + text[end:]
    if preamble_input:
        main_tex = main_tex.replace("\\begin{document}", f"\\input{{{preamble_input}}}\n\\begin{{document}}", 1)
    return {"main.tex": main_tex, "sections/method.tex": text[start:end]}


def test_a_bundle_missing_an_input_file_in_the_body_names_the_file(tmp_path: Path) -> None:
    files = split_example()
    del files["sections/method.tex"]
    path = tmp_path / "source.tar.gz"
    path.write_bytes(tar_gz(files))
    message = refusal(path)
    assert_says(message, "main.tex includes 'sections/method'", "no file sections/method[.tex] exists in source.tar.gz")
    assert_says(message, "add the missing file to the source, or remove that line")


def test_a_bundle_missing_a_preamble_input_is_read_and_the_report_names_the_file(tmp_path: Path) -> None:
    """`\\input{glyphtounicode}` (AAAI, ACL) names a TeX-installation file that no bundle carries."""
    path = tmp_path / "source.tar.gz"
    path.write_bytes(tar_gz(split_example(preamble_input="glyphtounicode")))
    paper = read_paper(path)
    assert [s.heading for s in paper.sections if s.level == 1][:3] == ["Introduction", "Related Work", "Method"]
    assert_says(paper.report().summary(), "preamble \\input files not in source.tar.gz (glyphtounicode")


def test_a_bundle_that_is_not_an_archive_says_so(tmp_path: Path) -> None:
    path = tmp_path / "source.tar.gz"
    path.write_bytes(gzip.compress(JUNK)[:200])
    assert_says(refusal(path), "source.tar.gz", "not a readable .tar.gz/.tgz/.zip LaTeX bundle", "unpack it")


# --- binary junk under every name ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "fragments"),
    [
        ("paper.tex", ("binary data, not LaTeX source", "picked the right file")),
        ("paper.json", ("binary data, not JSON", "picked the right file")),
        ("paper.md", ("binary data, not Markdown", "picked the right file")),
        ("paper.txt", ("binary data, not plain text", "picked the right file")),
        ("paper.zip", ("not a readable .tar.gz/.tgz/.zip LaTeX bundle", "download the source again")),
        ("paper", ("unknown paper format", "PDF, LaTeX")),
    ],
)
def test_binary_junk_is_refused_with_what_was_expected(tmp_path: Path, name: str, fragments: tuple[str, ...]) -> None:
    path = tmp_path / name
    path.write_bytes(JUNK)
    assert_says(refusal(path), name, *fragments)


# --- the command line ------------------------------------------------------------------------------


def bad_papers(folder: Path) -> dict[str, Path]:
    files = {
        "empty.pdf": b"",
        "page.pdf": IMPOSTORS["html"][0](),
        "junk.bin": JUNK,
        "cut.pdf": PDF.read_bytes()[:5000],
        "missing.tar.gz": tar_gz({k: v for k, v in split_example().items() if k == "main.tex"}),
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def test_p2c_paper_and_run_print_one_error_line_and_exit_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    backend = f"scripted:{EXAMPLE / 'scenario.yaml'}"
    for name, path in bad_papers(tmp_path).items():
        for argv in (["paper", str(path)], ["run", str(path), "--out", str(tmp_path / "run"), "--backend", backend]):
            assert main(argv) == PaperError.exit_code, (name, argv)
            out = capsys.readouterr()
            assert out.out == "", (name, out.out)
            lines = out.err.splitlines()
            assert len(lines) == 1 and lines[0].startswith("p2c: error: "), (name, out.err)
            assert name in lines[0]
        assert not (tmp_path / "run").exists(), "a bad paper must not leave a run folder behind"


@pytest.mark.parametrize("command", ["paper", "run"])
@pytest.mark.slow
def test_the_installed_command_shows_no_traceback_for_a_bad_paper(tmp_path: Path, command: str) -> None:
    path = bad_papers(tmp_path)["cut.pdf"]
    argv = [sys.executable, "-m", "p2c_notebook.cli", command, str(path)]
    if command == "run":
        argv += ["--out", str(tmp_path / "run"), "--backend", f"scripted:{EXAMPLE / 'scenario.yaml'}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "P2C_"))}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, env={**env, "P2C_CONFIG": "/nonexistent"})
    assert done.returncode == 3
    assert done.stdout == "" and "Traceback" not in done.stderr
    assert done.stderr.startswith("p2c: error: cut.pdf is a truncated or damaged PDF") and done.stderr.count("\n") == 1
