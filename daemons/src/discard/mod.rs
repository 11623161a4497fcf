//! The discard daemon (being written).

pub fn main() {
    libmail::log::fatal("discard: not built yet")
}
