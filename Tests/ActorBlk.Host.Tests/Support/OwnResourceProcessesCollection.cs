using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests.Support;

/// <summary>
/// Specs that run single `actorblk serve`, `bench` or sample processes on resources of their own:
/// devices they declare (memory-backed or on files in their own temporary directories), remoting
/// port 0, NBD on 127.0.0.1:0 or off, and either their own admin secret or a read of the shared
/// secret file (whose creation is atomic). They need not wait for
/// <see cref="ServeProcessesCollection"/>, whose specs serve the repository's disk0, and run one
/// after another beside it: a second chain rather than free classes, so that no more than about
/// three node processes start at once on a 2-core runner.
/// </summary>
/// <remarks>
/// Before, they were links of the serve chain, which ran alone for its last five minutes of a
/// loaded Host run (one test at a time where three may run).
/// </remarks>
[CollectionDefinition(Name)]
[RunsLong(90)]
public sealed class OwnResourceProcessesCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "own-resource-processes";
}
