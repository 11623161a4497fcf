//! The resolve half of trivial-rewrite: placeholder, written next.
