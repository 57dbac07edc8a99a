using System.Runtime.Serialization;
using ActorBlk.Actors.Serialization;
using Akka.Actor;
using Akka.Cluster;
using Akka.Event;
using Xunit;

namespace ActorBlk.Actors.Tests.MultiNode;

/// <summary>
/// On a node with an admin secret the cluster's own messages are sealed with it, and one without a
/// valid seal is refused before anything reads it (README, "Security"). An outside audit joined a
/// cluster from a process with another secret (a stock `actorblk bench --join`), killed it and
/// joined again: within a minute the split-brain resolver took the reachability changes for an
/// unstable network and downed every node.
/// </summary>
[Collection(ClusterCollection.Name)]
public sealed class ClusterSealSpec
{
    private static readonly TimeSpan Within = TimeSpan.FromSeconds(90);

    [Fact]
    public async Task Only_a_node_that_holds_the_admin_secret_joins_a_cluster()
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
            Assert.Contains("without proof of this node's admin secret", await refused.WaitAsync(Within), StringComparison.Ordinal);

            // Dropped before Akka read it: the node is no member, not even joining.
            var state = await a.CurrentStateAsync(Within);
            Assert.DoesNotContain(state.Members, m => m.Address.Equals(rogue.Cluster.SelfAddress));
        }

        var members = (await a.CurrentStateAsync(Within)).Members;
        Assert.Equal(2, members.Count);
        Assert.All(members, m => Assert.Equal(MemberStatus.Up, m.Status));
    }

    [Fact]
    public async Task A_seal_covers_the_whole_message_and_names_one_secret()
    {
        await using var node = ClusterNode.Start("p", hocon: "actorblk.remote.admin-secret = \"s\"");
        var system = (ExtendedActorSystem)node.System;
        var stock = new Akka.Cluster.Serialization.ClusterMessageSerializer(system);
        var guarded = new GuardedClusterMessageSerializer(system);
        Assert.True(guarded.Seals);
        var join = NewJoin(new UniqueAddress(new Address("akka.tcp", "actorblk", "127.0.0.1", 4053), 7), "storage");
        var manifest = stock.Manifest(join);
        var plain = stock.ToBinary(join);
        var key = "s"u8.ToArray();

        // Sealed on the way out; the seal is taken off on the way in, and Akka reads the message as sent.
        var sent = guarded.ToBinary(join);
        Assert.Equal(plain.Length + 36, sent.Length);
        Assert.Equal(plain, stock.ToBinary(guarded.FromBinary(sent, manifest)));

        // Unsealed, sealed with another secret, under another manifest or serializer, any byte changed, or more
        // appended (a second node field merged into the first, as protobuf reads it): refused.
        Assert.Throws<SerializationException>(() => guarded.FromBinary(plain, manifest));
        Assert.False(ClusterSeal.Open(ClusterSeal.Seal(plain, 5, manifest, "t"u8.ToArray()), 5, manifest, key).Valid);
        Assert.False(ClusterSeal.Open(sent, 5, manifest + "x", key).Valid);
        Assert.False(ClusterSeal.Open(sent, 12, manifest, key).Valid);
        for (var i = 0; i < sent.Length; i++)
        {
            var changed = (byte[])sent.Clone();
            changed[i] ^= 0x40;
            Assert.False(ClusterSeal.Open(changed, 5, manifest, key).Valid, $"byte {i} changed");
        }

        var other = stock.ToBinary(NewJoin(new UniqueAddress(new Address("akka.tcp", "actorblk", "10.6.6.6", 6666), 99), "storage"));
        Assert.Throws<SerializationException>(() => guarded.FromBinary([.. sent, .. other], manifest));

        // A node without a secret seals nothing and takes a sealed message without its seal.
        var (opened, valid) = ClusterSeal.Open(sent, 5, manifest, null);
        Assert.True(valid);
        Assert.Equal(plain, opened);
        Assert.True(ClusterSeal.Open(plain, 5, manifest, null).Valid);
    }

    // A review: the key was read once, so an embedding application whose secret file appeared after
    // the first cluster message stayed unsealed, taking anything, for good. It is looked for again
    // (at most once a second) until there is one; an unreadable file is a SerializationException.
    [Fact]
    public async Task A_secret_file_that_appears_later_is_taken_up()
    {
        using var dir = new ActorBlk.Testing.TempDirectory();
        var file = Path.Combine(dir.Path, "admin-secret");
        var source = new ClusterSeal.KeySource(Akka.Configuration.ConfigurationFactory.ParseString($"actorblk.remote.admin-secret-file = \"{file}\""));
        Assert.Null(source.Key);
        await File.WriteAllTextAsync(file, "later\n");
        using var deadline = new CancellationTokenSource(Within);
        using var tick = new PeriodicTimer(TimeSpan.FromMilliseconds(100));
        while (source.Key is null)
        {
            await tick.WaitForNextTickAsync(deadline.Token);
        }

        Assert.Equal("later"u8.ToArray(), source.Key);
    }

    // The registry's signatures take the late secret up too (README, "Security"): its key was read
    // once when the block layer started, so a node whose secret file appeared later sealed its
    // messages (and joined) but published its devices unsigned, and every other member ignored them
    // ("not signed with this node's admin secret") until it restarted.
    [Fact]
    public async Task A_secret_file_that_appears_later_signs_the_nodes_registry_entry_too()
    {
        using var dir = new ActorBlk.Testing.TempDirectory();
        var file = Path.Combine(dir.Path, "admin-secret");
        await using var a = ClusterNode.Start("a", hocon: "actorblk.remote.admin-secret = \"late-secret\"");
        await using var b = ClusterNode.Start("b", hocon: $"actorblk.remote.admin-secret-file = \"{file}\"");
        await a.JoinAsync(a, Within);
        await File.WriteAllTextAsync(file, "late-secret\n");
        await b.JoinAsync(a, Within);

        await b.Layer.CreateDeviceAsync(new ActorBlk.Hardware.Devices.DeviceOptions { Name = "late0", Size = 1 << 20, PollQueues = 0 });
        await a.Layer.CreateDeviceAsync(new ActorBlk.Hardware.Devices.DeviceOptions { Name = "early0", Size = 1 << 20, PollQueues = 0 });
        await a.WaitForDevicesAsync(d => d.Any(e => e.Name == "late0" && e.Node == b.Name), Within);
        await b.WaitForDevicesAsync(d => d.Any(e => e.Name == "early0" && e.Node == a.Name), Within);
        Assert.Empty(a.Devices.UnverifiedNodes);
        Assert.Empty(b.Devices.UnverifiedNodes);
    }

    // A cluster audit: shortly after a member joined, another refused its Distributed Data
    // messages as "without proof of this node's admin secret", though every member held the same
    // secret. Each serializer reads the secret at its first message, and a caller that came while
    // another was reading it got no key (the once-a-second look-again rule took the read in
    // progress for a look that found nothing) and sent its message unsealed. Callers that come
    // during the first read now wait for it.
    [Fact]
    public async Task Callers_that_come_while_the_secret_is_first_read_all_get_it()
    {
        using var dir = new ActorBlk.Testing.TempDirectory();
        var file = Path.Combine(dir.Path, "admin-secret");
        await File.WriteAllTextAsync(file, "shared\n");
        var config = Akka.Configuration.ConfigurationFactory.ParseString($"actorblk.remote.admin-secret-file = \"{file}\"");
        const int Callers = 8;
        for (var round = 0; round < 50; round++)
        {
            var source = new ClusterSeal.KeySource(config);
            using var start = new Barrier(Callers);
            var keys = Enumerable.Range(0, Callers).Select(_ => Task.Factory.StartNew(() =>
            {
                start.SignalAndWait();
                return source.Key;
            }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)).ToArray();
            Assert.All(await Task.WhenAll(keys), k => Assert.Equal("shared"u8.ToArray(), k));
        }
    }

    // A review: a secret file that could not be read was refused once, and then taken for no
    // secret for a second (the look was recorded before the read), so that node sealed nothing
    // and took unsealed messages meanwhile. Every call is refused while it cannot be read.
    [Fact]
    public void A_secret_file_that_cannot_be_read_refuses_every_call_rather_than_taking_everything()
    {
        // A file that exists and whose read fails whoever reads it, root included: reading a
        // process's memory from offset 0 (unmapped) is EIO.
        var source = new ClusterSeal.KeySource(Akka.Configuration.ConfigurationFactory.ParseString("actorblk.remote.admin-secret-file = \"/proc/self/mem\""));
        for (var call = 0; call < 3; call++)
        {
            Assert.Throws<System.Runtime.Serialization.SerializationException>(() => source.Key);
        }
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
                if (text.Contains("Refused a cluster message", StringComparison.Ordinal))
                {
                    seen.TrySetResult(text);
                }
            });
    }
}
