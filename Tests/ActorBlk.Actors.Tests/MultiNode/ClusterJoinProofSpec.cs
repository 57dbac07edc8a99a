using System.Runtime.Serialization;
using ActorBlk.Actors.Serialization;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// A node with an admin secret takes a cluster Join only with a proof of that secret (README,
/// "Security"). An outside audit joined a cluster from a process with another secret (a stock
/// `actorblk bench --join`), killed it and joined again: within a minute the split-brain resolver
/// took the reachability changes for an unstable network and downed every node.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class ClusterJoinProofSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Only_a_node_that_proves_the_admin_secret_joins_a_cluster()
    {
        await using var a = ClusterNode.Start("a", hocon: "actorblk.remote.admin-secret = \"cluster-secret\"");
        await using var b = ClusterNode.Start("b", hocon: "actorblk.remote.admin-secret = \"cluster-secret\"");
        await using var other = ClusterNode.Start("other", hocon: "actorblk.remote.admin-secret = \"another-secret\"");
        await using var none = ClusterNode.Start("none");
        await a.JoinAsync(a, Within);
        await b.JoinAsync(a, Within);

        foreach (var rogue in new[] { other, none })
        {
            var refused = Refusals(a.System);
            rogue.Cluster.Join(a.Cluster.SelfAddress);
            Assert.Contains("Refused a cluster join without proof of this node's admin secret", await refused.WaitAsync(Within), StringComparison.Ordinal);

            // The Join was dropped before Akka read it: the node is no member, not even joining.
            var state = await a.CurrentStateAsync(Within);
            Assert.DoesNotContain(state.Members, m => m.Address.Equals(rogue.Cluster.SelfAddress));
        }

        var members = (await a.CurrentStateAsync(Within)).Members;
        Assert.Equal(2, members.Count);
        Assert.All(members, m => Assert.Equal(MemberStatus.Up, m.Status));

        // The proof never enters the membership: the members' roles are their configured ones.
        Assert.All(members, m => Assert.DoesNotContain(m.Roles, r => r.StartsWith(JoinProof.Prefix, StringComparison.Ordinal)));
    }

    [Fact]
    public async Task A_join_proof_names_one_node_and_one_secret_and_is_stripped()
    {
        await using var node = ClusterNode.Start("p", hocon: "actorblk.remote.admin-secret = \"s\"");
        var system = (ExtendedActorSystem)node.System;
        var stock = new Akka.Cluster.Serialization.ClusterMessageSerializer(system);
        var guarded = new GuardedClusterMessageSerializer(system);
        var self = new UniqueAddress(new Address("akka.tcp", "actorblk", "127.0.0.1", 4053), 7);
        var join = NewJoin(self, "storage");
        var manifest = stock.Manifest(join);
        var secret = "s"u8.ToArray();

        // The sender adds the proof; the receiver strips it and Akka reads the Join as sent.
        var sent = guarded.ToBinary(join);
        Assert.True(sent.Length > stock.ToBinary(join).Length);
        var (stripped, proven) = JoinProof.Check(sent, secret);
        Assert.True(proven);
        Assert.Equal(stock.ToBinary(join), stripped);
        Assert.Equal(stock.ToBinary(join), stock.ToBinary(guarded.FromBinary(sent, manifest)));

        // Another secret, no proof, a tampered proof, another node's proof: refused.
        Assert.False(JoinProof.Check(sent, "t"u8.ToArray()).Proven);
        Assert.False(JoinProof.Check(stock.ToBinary(join), secret).Proven);
        Assert.Throws<SerializationException>(() => guarded.FromBinary(stock.ToBinary(join), manifest));
        var tampered = (byte[])sent.Clone();
        tampered[^1] ^= 1;
        Assert.False(JoinProof.Check(tampered, secret).Proven);
        var elsewhere = stock.ToBinary(NewJoin(new UniqueAddress(self.Address, 8), "storage"));
        var proofOfSelf = sent[stock.ToBinary(join).Length..];
        Assert.False(JoinProof.Check([.. elsewhere, .. proofOfSelf], secret).Proven);

        // A node without a secret has nothing to check: it takes the Join, without the proof.
        var (plain, taken) = JoinProof.Check(sent, null);
        Assert.True(taken);
        Assert.Equal(stock.ToBinary(join), plain);

        // Garbage is refused, never read past its end.
        Assert.Throws<SerializationException>(() => JoinProof.Check([0x0A, 0xFF, 0xFF, 0xFF, 0x0F], secret));
        Assert.Throws<SerializationException>(() => JoinProof.Check([0x0B], secret));
    }

    // Akka.Cluster's internal Join, as the cluster daemon builds it.
    private static object NewJoin(UniqueAddress node, params string[] roles)
    {
        var type = typeof(Cluster).Assembly.GetType("Akka.Cluster.InternalClusterAction+Join", throwOnError: true)!;
        var ctor = type.GetConstructors().OrderByDescending(c => c.GetParameters().Length).First();
        var args = ctor.GetParameters().Select(p => p.ParameterType == typeof(UniqueAddress) ? node
            : p.ParameterType.IsAssignableFrom(typeof(System.Collections.Immutable.ImmutableHashSet<string>)) ? System.Collections.Immutable.ImmutableHashSet.Create(roles)
            : p.ParameterType == typeof(Akka.Util.AppVersion) ? Akka.Util.AppVersion.Zero
            : p.ParameterType.IsValueType ? Activator.CreateInstance(p.ParameterType) : null).ToArray();
        return ctor.Invoke(args);
    }

    // The next refusal warning the node logs.
    private static Task<string> Refusals(ActorSystem system)
    {
        var seen = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var listener = system.ActorOf(Props.Create(() => new WarningListener(seen)));
        system.EventStream.Subscribe(listener, typeof(Warning));
        return seen.Task;
    }

    private sealed class WarningListener : ReceiveActor
    {
        public WarningListener(TaskCompletionSource<string> seen) =>
            Receive<Warning>(w =>
            {
                var text = w.Message?.ToString() ?? string.Empty;
                if (text.Contains("Refused a cluster join", StringComparison.Ordinal))
                {
                    seen.TrySetResult(text);
                }
            });
    }
}
