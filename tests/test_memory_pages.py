"""cmhash._memory: fits and encodings run without NumPy's huge-page requests where the
kernel's THP policy makes them stall, and NumPy's setting comes back afterwards."""
import numpy as np
import pytest

import cmhash._memory as memory

get, set_ = memory._numpy_switch()


@pytest.fixture
def restore_numpy_setting():
    before = get()
    yield
    set_(before)


def _sysfs(tmp_path, monkeypatch, enabled, defrag):
    for name, value, attr in (("enabled", enabled, "THP_ENABLED"),
                              ("defrag", defrag, "THP_DEFRAG")):
        path = tmp_path / name
        path.write_text(value)
        monkeypatch.setattr(memory, attr, str(path))


@pytest.mark.parametrize("enabled, defrag, stalls", [
    ("always [madvise] never\n", "always defer defer+madvise [madvise] never\n", True),
    ("[always] madvise never\n", "[always] defer defer+madvise madvise never\n", True),
    ("always [madvise] never\n", "always defer [defer+madvise] madvise never\n", True),
    ("always [madvise] never\n", "always [defer] defer+madvise madvise never\n", False),
    ("always [madvise] never\n", "always defer defer+madvise madvise [never]\n", False),
    ("always madvise [never]\n", "always defer defer+madvise [madvise] never\n", False),
])
def test_the_policy_is_read_from_sysfs(tmp_path, monkeypatch, enabled, defrag, stalls):
    _sysfs(tmp_path, monkeypatch, enabled, defrag)
    assert memory.huge_page_requests_stall() is stalls


def test_no_sysfs_means_no_change(tmp_path, monkeypatch, restore_numpy_setting):
    monkeypatch.setattr(memory, "THP_ENABLED", str(tmp_path / "absent"))
    set_(True)
    with memory.ordinary_pages():
        assert get() is True


@pytest.mark.parametrize("before", [True, False])
def test_ordinary_pages_turns_the_requests_off_and_restores(monkeypatch, restore_numpy_setting,
                                                            before):
    monkeypatch.setattr(memory, "huge_page_requests_stall", lambda: True)
    set_(before)
    with memory.ordinary_pages():
        assert get() is False
        with memory.ordinary_pages():                 # nested: the outermost restores
            assert get() is False
        assert get() is False
    assert get() is before


def test_keep_in_the_environment_keeps_numpys_setting(monkeypatch, restore_numpy_setting):
    monkeypatch.setattr(memory, "huge_page_requests_stall", lambda: True)
    monkeypatch.setenv("CMHASH_HUGEPAGES", "keep")
    set_(True)
    with memory.ordinary_pages():
        assert get() is True


def test_a_fit_and_an_encoding_run_with_ordinary_pages_and_give_the_same_codes(
        monkeypatch, restore_numpy_setting):
    from cmhash.base import make_hasher
    from cmhash.data import load_dataset
    import cmhash.kernel as kernel
    ds = load_dataset("synthetic:nuswide-like", random_state=0, n_train=400)
    views, labels = ds.views("train"), ds.labels_of("train")
    seen = []

    def spying(real, what):
        def spy(self, X, **kw):
            seen.append((what, get()))
            return real(self, X, **kw)
        return spy
    for what in ("fit_transform", "transform"):
        monkeypatch.setattr(kernel.RBFAnchorFeatures, what,
                            spying(getattr(kernel.RBFAnchorFeatures, what), what))
    import cmhash.base as base
    monkeypatch.setattr(base, "ENCODE_ORDINARY_PAGES_ROWS", 1)
    monkeypatch.setattr(memory, "huge_page_requests_stall", lambda: True)
    set_(True)
    fitted = make_hasher("batch", n_bits=8, random_state=0).fit_views(
        views, labels, names=ds.modality_names)
    codes = fitted.encode(ds.views("query")[0], 0)
    assert {what for what, _ in seen} == {"fit_transform", "transform"}
    assert {flag for _, flag in seen} == {False} and get() is True
    monkeypatch.setenv("CMHASH_HUGEPAGES", "keep")
    seen.clear()
    again = make_hasher("batch", n_bits=8, random_state=0).fit_views(
        views, labels, names=ds.modality_names)
    assert {flag for _, flag in seen} == {True}
    assert np.array_equal(again.codes_, fitted.codes_)
    assert np.array_equal(again.encode(ds.views("query")[0], 0), codes)


class _FakeLibc:
    def __init__(self):
        self.calls = []

    def mallopt(self, param, value):
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad):
        self.calls.append(("malloc_trim", pad))
        return 1


def test_freed_memory_is_kept_inside_and_released_after(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(memory, "_glibc", lambda: libc)
    monkeypatch.setattr(memory, "huge_page_requests_stall", lambda: False)
    with memory.ordinary_pages():
        assert libc.calls == [("mallopt", memory.M_MMAP_MAX, 0),
                              ("mallopt", memory.M_TRIM_THRESHOLD, 2 ** 31 - 1)]
        with memory.ordinary_pages():                 # nested: no second setting
            pass
        assert len(libc.calls) == 2
    assert libc.calls[2:] == [
        ("mallopt", memory.M_MMAP_MAX, memory.DEFAULT_MMAP_MAX),
        ("mallopt", memory.M_MMAP_THRESHOLD, memory.DYNAMIC_MMAP_THRESHOLD_MAX),
        ("mallopt", memory.M_TRIM_THRESHOLD, 2 * memory.DYNAMIC_MMAP_THRESHOLD_MAX),
        ("malloc_trim", 0)]


def test_malloc_reuse_off_in_the_environment(monkeypatch):
    libc = _FakeLibc()
    monkeypatch.setattr(memory, "_glibc", lambda: libc)
    monkeypatch.setenv("CMHASH_MALLOC_REUSE", "0")
    with memory.ordinary_pages():
        pass
    assert libc.calls == []


def test_large_arrays_in_worker_threads_allocate_while_mmap_is_off():
    """glibc with M_MMAP_MAX = 0: a thread's arena still maps what its heap cannot hold."""
    import threading
    got = []

    def worker():
        got.append(float(np.ones((96 << 20) // 8).sum()))
    with memory.ordinary_pages():
        t = threading.Thread(target=worker)
        t.start()
        t.join(30)
        got.append(float(np.ones((80 << 20) // 8).sum()))
    assert got == [(96 << 20) / 8, (80 << 20) / 8]


def test_a_small_encode_leaves_the_process_settings_alone(monkeypatch, restore_numpy_setting):
    """A service's one-query encodes skip ordinary_pages (no mallopt / malloc_trim per call)."""
    from cmhash.base import ENCODE_ORDINARY_PAGES_ROWS, make_hasher
    from cmhash.data import load_dataset
    ds = load_dataset("synthetic:nuswide-like", random_state=0, n_train=300)
    fitted = make_hasher("batch", n_bits=8, random_state=0).fit_views(
        ds.views("train"), ds.labels_of("train"), names=ds.modality_names)
    entered = []
    real = memory.ordinary_pages
    import cmhash.base as base
    monkeypatch.setattr(base, "ordinary_pages", lambda: entered.append(1) or real())
    X = ds.views("train")[0]
    fitted.encode(X[:1], 0)
    assert entered == []
    big = X[np.arange(ENCODE_ORDINARY_PAGES_ROWS) % X.shape[0]]
    fitted.encode(big, 0)
    assert entered == [1]
