pub mod consul;
