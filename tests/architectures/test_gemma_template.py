"""Gemma's chat templates have no system role: Gemma 2's raises on one, Gemma 3's merges it into
the first user turn. Cortex renders a system message for Gemma 2 as Gemma 3's template does."""

from __future__ import annotations

from cortex.neuron.text.chat_template import render_chat_template

# google/gemma-2-2b-it's template.
GEMMA2 = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)


def test_system_message_goes_into_the_first_user_turn() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Bye."},
    ]
    text = render_chat_template(GEMMA2, messages, variables={"bos_token": "<bos>"})
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nBye.<end_of_turn>\n<start_of_turn>model\n"
    )


def test_without_system_message_renders_as_is() -> None:
    text = render_chat_template(GEMMA2, [{"role": "user", "content": "Hi"}], variables={})
    assert text == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"
