//! The pickup daemon (being written).

pub fn main() {
    libmail::log::fatal("pickup: not built yet")
}
