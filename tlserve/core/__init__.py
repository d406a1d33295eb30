"""The shared core: what the trainer, the server, offline scoring and the benchmarks all use, and no role.

Preprocessing, features and the lexical channel (`preprocessing`, `features`, `lexicon`,
`ragged`); the vector store and the copies a server maps (`vector_store`, `snapshots`); the
bundle format (`bundle`, its one owner) and the in-process `scorer`; files of texts and of
labelled texts (`text_files`, `labelled`); ranking and evaluation (`ranking`, `evaluation`);
errors, process helpers and how the command line reads (`errors`, `processes`,
`process_memory`, `native_logs`, `help_format`).
"""
