using Xunit;

namespace ActorBlk.Host.Tests.Support;

/// <summary>
/// Specs that run `actorblk serve` processes share machine-wide resources: the repository's
/// hocon.conf serves disk0 on /var/tmp/actorblk-disk0.img, which a node locks (flock), and the
/// admin secret file. They run one after another, never beside each other.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class ServeProcessesCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "serve-processes";
}
