//! tokbridge: distill language models across model families on libtorch.
//!
//! See ARCHITECTURE.md for the map of modules and how one training step flows through them.
pub mod align;
pub mod atomic;
pub mod data;
pub mod device;
pub mod export;
pub mod files;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod log;
pub mod loss;
pub mod membound;
pub mod models;
pub mod nn;
pub mod ops;
pub mod parquet_pages;
pub mod recipes;

pub mod served;
pub mod spec;
pub mod train;
