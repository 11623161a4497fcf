//! error(8): the delivery agent that fails every recipient of a request
//! with the reason in the next hop (`error:5.1.2 domain gone` in
//! transport_maps, or the virtual alias class's "User unknown in virtual
//! alias table"). Run as the `retry` service it defers instead of
//! bouncing, like Postfix's.

use libmail::deliver::{run_agent, same_for_all, Status};

pub fn main() {
    run_agent(
        "error",
        |svc| Ok(svc.name == "retry"),
        |&retry, req| {
            if retry {
                same_for_all(
                    req,
                    Status::Deferred,
                    &req.nexthop,
                    "4.0.0",
                    "delivery temporarily suspended",
                )
            } else {
                same_for_all(
                    req,
                    Status::Bounced,
                    &req.nexthop,
                    "5.0.0",
                    "mail delivery disabled",
                )
            }
        },
    );
}
