"""The documentation says what the code does: the vocabulary page lists every callback's real arguments."""

import inspect
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_vocabulary_lists_every_callback_argument():
    import lightning_nas.callbacks as C

    text = (ROOT / "docs" / "vocabulary.md").read_text()
    table = text.split("<!-- callback-arguments:start -->")[1].split("<!-- callback-arguments:end -->")[0]
    documented = {}
    for row in table.splitlines():
        m = re.match(r"^\| `(\w+)` \| (.*) \|$", row)
        if m:
            documented[m.group(1)] = re.findall(r"`(\w+)`", m.group(2))
    real = {}
    for name in C.__all__:
        obj = getattr(C, name)
        if inspect.isclass(obj) and name != "LightningNASCallback":
            params = list(inspect.signature(obj.__init__).parameters)[1:]
            real[name] = [p for p in params if p not in ("args", "kwargs")]
    assert documented == real


def test_readme_links_to_docs_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "README.md links to no docs page"
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert not missing, missing
