//! discard(8): the delivery agent that reports every recipient delivered
//! and drops the mail (`discard:` in transport_maps). The log says why:
//! the next-hop text, or "discarded" when there is none.

use libmail::deliver::{same_for_all, serve_connection, Status, CONNECTION_IDLE};
use libmail::service::Service;

pub fn main() {
    let svc = Service::start("discard");
    let layout = svc.layout.clone();
    svc.serve_streams(false, move |stream| {
        serve_connection(stream, CONNECTION_IDLE, &layout, |req| {
            same_for_all(req, Status::Sent, &req.nexthop, "2.0.0", "discarded")
        })
    });
}
