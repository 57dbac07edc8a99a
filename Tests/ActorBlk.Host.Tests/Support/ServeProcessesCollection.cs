using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests.Support;

/// <summary>
/// Specs that run `actorblk serve` with the repository's hocon.conf as it is: it serves disk0 on
/// /var/tmp/actorblk-disk0.img, which a node locks (flock), so they run one after another, never
/// beside each other. Beside them run the other collections, among them
/// <see cref="OwnResourceProcessesCollection"/>, whose processes serve devices and ports of their
/// own, so the suite's time is the longest chain's rather than the sum of the chains.
/// </summary>
[CollectionDefinition(Name)]
[RunsLong(125)]
public sealed class ServeProcessesCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "serve-processes";
}
