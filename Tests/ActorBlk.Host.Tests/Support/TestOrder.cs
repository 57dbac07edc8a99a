using Xunit;

// The collections marked [RunsLong] start first, longest first (see LongestFirstCollectionOrderer).
[assembly: TestCollectionOrderer("ActorBlk.Testing.LongestFirstCollectionOrderer", "ActorBlk.Testing")]
