//! The error daemon; see `facteur_daemons::error`.
fn main() {
    facteur_daemons::error::main()
}
