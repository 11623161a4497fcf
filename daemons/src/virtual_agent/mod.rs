//! The virtual daemon (being written).

pub fn main() {
    libmail::log::fatal("virtual: not built yet")
}
