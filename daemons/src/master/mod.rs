//! The master daemon (being written).

pub fn main() {
    libmail::log::fatal("master: not built yet")
}
