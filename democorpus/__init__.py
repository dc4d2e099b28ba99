"""The demo corpus: real photos shipped in packages, bilingual captions, planted duplicates and hostile files."""
