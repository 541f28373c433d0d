//! tokbridge: distill language models across model families on libtorch.
//!
//! See ARCHITECTURE.md for the map of modules and how one training step flows through them.
pub mod align;
pub mod atomic;
pub mod compare;
pub mod data;
pub mod export;
pub mod generate;
pub mod gguf;
pub mod hf;
pub mod loss;
pub mod models;
pub mod nn;
pub mod recipe;
pub mod recipes;
pub mod runtime;
pub mod served;
pub mod train;
