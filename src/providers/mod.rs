//! Provider wire formats other than OpenAI's. Each module is pure translation (values in, values
//! out), unit-tested over fixtures; the engine calls it around the attempt.

pub mod anthropic;
pub mod gemini;
