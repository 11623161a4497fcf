//! discard(8): the delivery agent that reports every recipient delivered
//! and drops the mail (`discard:` in transport_maps). The log says why:
//! the next-hop text, or "discarded" when there is none.

use libmail::deliver::{run_agent, same_for_all, Status};

pub fn main() {
    run_agent(
        "discard",
        |_| Ok(()),
        |_, req| same_for_all(req, Status::Sent, &req.nexthop, "2.0.0", "discarded"),
    );
}
