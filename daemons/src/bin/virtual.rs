//! The virtual daemon; see `facteur_daemons::virtual_agent`.
fn main() {
    facteur_daemons::virtual_agent::main()
}
