//! The qmgr daemon; see `facteur_daemons::qmgr`.
fn main() {
    facteur_daemons::qmgr::main()
}
