//! The local daemon (being written).

pub fn main() {
    libmail::log::fatal("local: not built yet")
}
