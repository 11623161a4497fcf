//! The qmgr daemon (being written).

pub fn main() {
    libmail::log::fatal("qmgr: not built yet")
}
