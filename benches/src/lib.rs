//! Criterion micro-benchmarks for Updraft. The benchmarks themselves live in `benches/benches/`.
