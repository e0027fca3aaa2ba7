// The XDP object is the binary (src/main.rs); this empty library lets lb-user name the crate as a
// build dependency so cargo rebuilds the object when its sources change.
#![no_std]
