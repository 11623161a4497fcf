//! The cleanup daemon (being written).

pub fn main() {
    libmail::log::fatal("cleanup: not built yet")
}
