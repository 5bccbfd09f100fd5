"""The slide readers pathme supports, by MONAI WSIReader backend name (importable without MONAI).

``auto`` (the default) reads each slide with cuCIM and falls back, per slide, to OpenSlide where cuCIM cannot
decode it (e.g. RGBA or single-channel deflate tiles); the reader that did the decoding is what a store records.
"""

AUTO = "auto"
READERS = ("cucim", "openslide")  # in the order ``auto`` tries them
BACKENDS = (AUTO, *READERS)
#: file suffixes of the slide formats those readers open (Aperio .svs, TIFF, Hamamatsu .ndpi and .vms, MIRAX .mrxs,
#: Leica .scn, Ventana .bif, Sakura .svslide): what a folder of slides (Deploy input, GDC download) is searched for
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".svslide")


def readers_for(backend: str) -> tuple[str, ...]:
    """The readers to try, in order, for a configured backend; ValueError for an unknown one."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown reader backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    return READERS if backend == AUTO else (backend,)
