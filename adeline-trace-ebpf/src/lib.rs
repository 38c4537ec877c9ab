// Empty: lets adeline-trace/build.rs depend on this crate so cargo rebuilds
// the agent when the kernel programs change. The programs are in main.rs.
#![no_std]
