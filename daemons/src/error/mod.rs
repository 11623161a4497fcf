//! The error daemon (being written).

pub fn main() {
    libmail::log::fatal("error: not built yet")
}
