using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Host.Tests.Support;

/// <summary>
/// Specs that run clusters of `actorblk serve` processes and kill, stop or restart their nodes.
/// Each serves devices of its own on ports of its own (remoting port 0, NBD on 127.0.0.1:0), so
/// they need not wait for <see cref="ServeProcessesCollection"/> or <see cref="OwnResourceProcessesCollection"/>; they run one after another
/// (each cluster's failure detection and split-brain timing is the spec's subject, and two such
/// clusters at once on two cores would only slow each other) and beside the other collections.
/// `bench --join` against a cluster (ClusterBenchSpec) is one of them for the same reason.
/// </summary>
[CollectionDefinition(Name)]
[RunsLong(260)]
public sealed class ClusterProcessesCollection
{
    /// <summary>The collection's name.</summary>
    public const string Name = "cluster-processes";
}
