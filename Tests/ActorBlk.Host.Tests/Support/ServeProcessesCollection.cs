using Xunit;

namespace ActorBlk.Host.Tests.Support;

/// <summary>
/// Specs that run `actorblk serve` processes share machine-wide resources: the repository's
/// hocon.conf serves disk0 on /var/tmp/actorblk-disk0.img, which a node locks (flock), and the
/// admin secret file. They run one after another, never beside each other; beside them run the
/// specs of other collections (none of which serves that configuration's devices or ports), so
/// the suite's time is this chain's rather than the chain's plus everyone else's.
/// </summary>
[CollectionDefinition(Name)]
public sealed class ServeProcessesCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "serve-processes";
}
